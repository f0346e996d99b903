// etcd's server module replaces its sibling modules with relative paths, so
// `go install` refuses it; this wrapper builds the same binary from the
// published modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
