// libarchive (https://libarchive.org), Debian's libarchive-dev: the tar streams of `dpkg-deb --fsys-tarfile`
// and `--ctrl-tarfile` are read with it, never by hand. Only the apt hook's program links it.
#include <archive.h>
#include <archive_entry.h>
