#!/bin/busybox sh
# PID 1 of the throw-away VM that tools/verity-vm boots: checks appctl's fs-verity support against a
# real kernel with CONFIG_FS_VERITY. Prints "APPCTL-VM-RESULT <name> pass|fail <detail>" per check,
# "APPCTL-VM-FIGURE ..." for timings, "APPCTL-VM-DONE" at the end, then powers the VM off.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs -o size=900m tmpfs /tmp
insmod /lib/modules/loop.ko
hostname appctl-vm
rounds=$(sed -n 's/.*appctl\.rounds=\([0-9]*\).*/\1/p' /proc/cmdline)
rounds=${rounds:-1}

result() { echo "APPCTL-VM-RESULT $1 $2 ${3:-}"; }
check() { # check NAME CONDITION-COMMAND...
  name=$1; shift
  if "$@"; then result "$name" pass; else result "$name" fail "($*)"; fi
}
status_field() { appctl status --socket /tmp/appctl.sock --json | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

echo "APPCTL-VM-KERNEL $(uname -r)"
dd if=/dev/zero of=/tmp/disk.img bs=1M count=0 seek=$((100 + rounds * 60)) 2>/dev/null
mkfs.ext4 -q -F -b 4096 -O verity /tmp/disk.img
mkdir -p /v && mount -o loop /tmp/disk.img /v

# Programs: a static `true`; copies changed by a few bytes, owned by uid 1000 (so only fs-verity, not
# root ownership, can make a verdict cacheable in the kernel); per timing round a pair of root-owned
# 24 MiB programs, one with fs-verity, one without.
cp /bin/true-static /v/sealed
cp /bin/true-static /v/plain && printf 'plain' >> /v/plain
mkdir /v/elsewhere && cp /bin/true-static /v/elsewhere/stranger && printf 'stranger' >> /v/elsewhere/stranger
chmod 755 /v/* /v/elsewhere/stranger
chown 1000:1000 /v/* /v/elsewhere/stranger
i=1
while [ $i -le $rounds ]; do
  for kind in sealed plain; do
    cp /bin/true-static /v/big-$kind-$i && dd if=/dev/urandom bs=1M count=24 2>/dev/null >> /v/big-$kind-$i
    chmod 755 /v/big-$kind-$i
  done
  fsverity enable /v/big-sealed-$i || result "enable-big-sealed-$i" fail
  # The same program on the tmpfs the daemon does not mark: a first exec with no decision at all.
  cp /v/big-plain-$i /tmp/unmarked-$i
  i=$((i + 1))
done
for f in sealed elsewhere/stranger; do
  out=$(fsverity enable /v/$f 2>&1) || result "enable-$f" fail "$out"
done
measured=$(fsverity measure /v/sealed | sed -n 's/^sha256:\([0-9a-f]*\) .*/\1/p')
check kernel-measures-verity test ${#measured} -eq 64

# learn records the digest for the verity files and only for them; the inventory is format 2.
appctl key generate --private /tmp/k.key --public /tmp/k.pub >/dev/null
appctl learn --root /v --exclude /v/elsewhere --out /tmp/inventory.txt > /tmp/learn.out 2>&1
cat /tmp/learn.out
check learn-writes-format-2 grep -qx 'appctl-policy 2' /tmp/inventory.txt
check learn-records-verity-digest grep -q "/v/sealed fsverity-sha256:$measured\$" /tmp/inventory.txt
check learn-no-digest-without-verity grep -q '/v/plain$' /tmp/inventory.txt
check learn-summary-mentions-verity grep -q "fs-verity: $((rounds + 1)) files" /tmp/learn.out
appctl policy sign --key /tmp/k.key --serial 1 --out /tmp/policy.txt /tmp/inventory.txt >/dev/null
check policy-verifies appctl policy verify --key /tmp/k.pub /tmp/policy.txt
check check-decides-by-verity sh -c "appctl check --policy /tmp/policy.txt --key /tmp/k.pub /v/sealed | grep -q 'by fs-verity digest $measured'"

# The daemon, enforcing on /v only. Without the background pass over the policy's large files: these checks measure
# a first exec decided by fs-verity against one decided by hashing.
printf 'prehash-listed = no\n' > /tmp/appctl.conf
appctl daemon --config /tmp/appctl.conf --mode enforce --policy /tmp/policy.txt --key /tmp/k.pub --path /v --events /tmp/events.jsonl \
  --socket /tmp/appctl.sock --state-dir /tmp/state --learn-out /tmp/learned.txt > /tmp/daemon.log 2>&1 &
daemon=$!
i=0
while ! appctl status --socket /tmp/appctl.sock >/dev/null 2>&1 && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
check daemon-ready appctl status --socket /tmp/appctl.sock

/v/sealed; check exec-verity-file-allowed test $? -eq 0
check decided-by-verity test "$(status_field verity_decisions)" -ge 1
check verity-file-not-hashed test "$(status_field hashes_computed)" -eq 0
check verdict-cached-in-kernel test "$(status_field ignore_marks_placed)" -ge 1
/v/plain; check exec-plain-file-allowed-by-hash test $? -eq 0
check plain-file-hashed test "$(status_field hashes_computed)" -ge 1
check exec-unknown-verity-file-denied-with-eperm test "$(try-exec /v/elsewhere/stranger)" = errno=1

# The figure: first exec of a 24 MiB program decided by its verity digest, then its twin decided by hashing
# (data in the page cache for both: learn read them), alternating, one pair per round; then the hashed one
# again, now answered from the kernel-side cache: the cost of an exec with no decision to make.
hashed_before=$(status_field hashes_computed)
verity_before=$(status_field verity_decisions)
i=1
while [ $i -le $rounds ]; do
  unmarked_us=$(time-exec /tmp/unmarked-$i) || result "exec-unmarked-$i" fail
  sealed_us=$(time-exec /v/big-sealed-$i) || result "exec-big-sealed-$i" fail
  plain_us=$(time-exec /v/big-plain-$i) || result "exec-big-plain-$i" fail
  warm_us=$(time-exec /v/big-plain-$i) || result "exec-big-plain-$i-again" fail
  echo "APPCTL-VM-FIGURE first-exec-24MiB round=$i unmarked_us=$unmarked_us verity_us=$sealed_us hashed_us=$plain_us warm_us=$warm_us"
  i=$((i + 1))
done
# Root-owned: one hash per plain program (the open that follows its exec is answered from the cache).
check big-verity-files-not-hashed test "$(( $(status_field hashes_computed) - hashed_before ))" -eq "$rounds"
check big-verity-files-decided-by-verity test "$(( $(status_field verity_decisions) - verity_before ))" -ge "$rounds"

# A blocklisted content digest is denied even though its verity digest is listed, and the kernel-side
# verdict placed above is flushed by the reload.
sha=$(sha256sum /v/sealed | cut -d' ' -f1)
sed -e 's/^deny-count 0$/deny-count 1/' /tmp/inventory.txt > /tmp/inventory2.txt
echo "deny $sha revoked" >> /tmp/inventory2.txt
appctl policy sign --key /tmp/k.key --serial 2 --out /tmp/policy.txt /tmp/inventory2.txt >/dev/null
check reload-accepted appctl reload --socket /tmp/appctl.sock
check blocklist-beats-verity test "$(try-exec /v/sealed)" = errno=1

kill -TERM $daemon; wait $daemon
check daemon-stops-cleanly test $? -eq 0
echo "APPCTL-VM-DONE"
sync
poweroff -f
