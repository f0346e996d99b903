// bedctl is the test bed's own helper: it creates the simulated nodes, runs the pods bound to them
// (the node executor, standing in for a kubelet), and hashes registry passwords. e2e/cluster drives it.
package main

import (
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "nodes":
		err = runNodes(os.Args[2:])
	case "executor":
		err = runExecutor(os.Args[2:])
	case "container-init":
		err = containerInit(os.Args[2:])
	case "htpasswd":
		err = htpasswd(os.Args[2:])
	case "token-server":
		err = tokenServer(os.Args[2:])
	case "forward":
		err = runForward(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bedctl %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, `usage:
  bedctl nodes --kubeconfig FILE --names a,b,c [--labels k=v,...]   create Ready, untainted simulated nodes
  bedctl executor --kubeconfig FILE --state DIR --binary FILE --apiserver HOST:PORT
  bedctl htpasswd USER PASSWORD                       print a bcrypt htpasswd line
  bedctl token-server --addr A --key K --cert C --user U --password P   registry token service
  bedctl forward --netns PATH LISTEN=127.0.0.1:PORT...   listen inside a network namespace, dial loopback`)
	os.Exit(2)
}
