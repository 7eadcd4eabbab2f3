/// The version `appctl --version` prints and `tools/package` writes into the .deb (it reads it from this line).
let appctlVersion = "0.13.0"
