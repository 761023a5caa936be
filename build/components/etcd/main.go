// Command etcd is the upstream etcd server with one build-time setting changed:
// the WAL preallocates 8 MB segments instead of 64 MB. On a RAM-only node the
// WAL lives in tmpfs, where two preallocated 64 MB segments cost 128 MiB of
// memory for nothing; everything else is upstream's etcdmain.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
	"go.etcd.io/etcd/server/v3/storage/wal"
)

const walSegmentBytes = 8 * 1000 * 1000

func main() {
	wal.SegmentSizeBytes = walSegmentBytes
	etcdmain.Main(os.Args)
}
