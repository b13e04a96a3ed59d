#!/bin/sh
# A pack cache behind git's own hook point, `uploadpack.packObjectsHook`: the design serve did not
# take, kept here to be measured beside it (benchmarks/fleet). upload-pack runs this instead of
# pack-objects, as `<hook> git pack-objects <args>`, in the repository, with the want/have/shallow
# input on stdin. The key is the repository, the arguments and that input; a hit is `cat` of the
# finished pack; a miss takes a lock on the key (identical requests arriving meanwhile wait for it and
# then hit), runs pack-objects and keeps its output once it exited 0.
#
# PACK_HOOK_CACHE names the cache directory. On a miss the last arguments and input are kept beside
# it (last-args, last-input), so the benchmark can time a hit of the hook alone.
set -u
cache=${PACK_HOOK_CACHE:?}
input=$(mktemp "$cache/in.XXXXXX")
cat >"$input"
key=$({ pwd; printf '%s\n' "$@"; cat "$input"; } | sha256sum | cut -c1-64)
if [ -f "$cache/$key" ]; then
	rm -f "$input"
	exec cat "$cache/$key"
fi
exec 9>"$cache/$key.lock"
flock 9
if [ -f "$cache/$key" ]; then
	rm -f "$input"
	exec cat "$cache/$key"
fi
printf '%s\n' "$@" >"$cache/last-args"
cp "$input" "$cache/last-input"
tmp=$(mktemp "$cache/tmp.XXXXXX")
if "$@" <"$input" >"$tmp"; then
	cat "$tmp"
	mv "$tmp" "$cache/$key"
	status=0
else
	status=$?
	rm -f "$tmp"
fi
rm -f "$input"
exit $status
