package main

// The real node's network: its pods live in network namespaces behind a bridge inside one namespace
// the bed creates (the node namespace); the bed's servers listen on host loopback. `forward` opens
// its listening sockets inside the node namespace (setns on one locked thread, then back) and dials
// loopback in the host namespace for each connection, so a pod and a host process reach the same
// server at the same node-namespace address, and no traffic ever goes anywhere but loopback or the
// bed's own namespaces.

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

type rule struct{ listen, target string }

func parseRules(args []string) ([]rule, error) {
	var rules []rule
	for _, a := range args {
		l, t, ok := strings.Cut(a, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want LISTEN_ADDR=TARGET_ADDR", a)
		}
		if h, _, err := net.SplitHostPort(t); err != nil || !net.ParseIP(h).IsLoopback() {
			return nil, fmt.Errorf("%q: the target must be a loopback address", a)
		}
		rules = append(rules, rule{l, t})
	}
	if len(rules) == 0 {
		return nil, errors.New("no LISTEN=TARGET rule")
	}
	return rules, nil
}

// listenIn opens every listener inside the network namespace at path.
func listenIn(path string, rules []rule) ([]net.Listener, error) {
	runtime.LockOSThread()
	// The thread is discarded (left locked) if switching back fails, so no goroutine runs in the
	// wrong namespace.
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, err
	}
	defer self.Close()
	target, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer target.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("entering %s: %w", path, err)
	}
	var listeners []net.Listener
	var lerr error
	for _, r := range rules {
		l, err := net.Listen("tcp", r.listen)
		if err != nil {
			lerr = fmt.Errorf("listening on %s in %s: %w", r.listen, path, err)
			break
		}
		listeners = append(listeners, l)
	}
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("leaving %s: %w", path, err)
	}
	runtime.UnlockOSThread()
	if lerr != nil {
		for _, l := range listeners {
			l.Close()
		}
		return nil, lerr
	}
	return listeners, nil
}

func serve(l net.Listener, target string) {
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept on %s: %v", l.Addr(), err)
			continue
		}
		go pipe(c, target)
	}
}

func pipe(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		log.Printf("%s -> %s: %v", c.RemoteAddr(), target, err)
		return
	}
	defer u.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	half := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		if t, ok := dst.(*net.TCPConn); ok {
			_ = t.CloseWrite()
		}
	}
	go half(u, c)
	go half(c, u)
	wg.Wait()
}

func runForward(args []string) error {
	fs := flag.NewFlagSet("forward", flag.ExitOnError)
	netns := fs.String("netns", "", "path of the network namespace to listen in (e.g. /run/netns/NAME)")
	_ = fs.Parse(args)
	if *netns == "" {
		return errors.New("--netns is required")
	}
	rules, err := parseRules(fs.Args())
	if err != nil {
		return err
	}
	listeners, err := listenIn(*netns, rules)
	if err != nil {
		return err
	}
	for i, l := range listeners {
		go serve(l, rules[i].target)
	}
	log.Printf("forwarding %d addresses from %s to loopback", len(rules), *netns)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	return nil
}
