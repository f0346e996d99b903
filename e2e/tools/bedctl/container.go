package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

type mount struct {
	Source   string `json:"source"`
	Target   string `json:"target"`
	ReadOnly bool   `json:"readOnly"`
}

// containerSpec is what the executor hands to `container-init`, which runs in a fresh mount namespace.
type containerSpec struct {
	Argv         []string `json:"argv"`
	Env          []string `json:"env"`
	WorkingDir   string   `json:"workingDir"`
	Mounts       []mount  `json:"mounts"`
	ReadOnlyRoot bool     `json:"readOnlyRoot"`
	NoNewPrivs   bool     `json:"noNewPrivs"`
	UID          *int64   `json:"uid,omitempty"`
	GID          *int64   `json:"gid,omitempty"`
	Groups       []int64  `json:"groups,omitempty"`
}

// containerInit runs inside the container's own mount namespace: it bind-mounts the pod's volumes at
// their mountPaths (so the process sees exactly the paths of its pod spec), makes the root read-only
// when the security context asks, drops to the requested user and execs the container's process.
func containerInit(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("want SPEC.json")
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return err
	}
	var spec containerSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	// Mounts made here must not leak back to the host's namespace.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	for _, m := range spec.Mounts {
		if err := bindMount(m); err != nil {
			return err
		}
	}
	if spec.ReadOnlyRoot {
		// After the volume binds, so that only the root mount (the "image") becomes read-only.
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only root filesystem: %w", err)
		}
	}
	wd := spec.WorkingDir
	if wd == "" {
		wd = "/"
	}
	if err := os.Chdir(wd); err != nil {
		return fmt.Errorf("workingDir %s: %w", wd, err)
	}
	if spec.NoNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	if spec.GID != nil || len(spec.Groups) > 0 {
		groups := make([]int, 0, len(spec.Groups))
		for _, g := range spec.Groups {
			groups = append(groups, int(g))
		}
		if err := syscall.Setgroups(groups); err != nil {
			return fmt.Errorf("setgroups: %w", err)
		}
	}
	if spec.GID != nil {
		if err := syscall.Setgid(int(*spec.GID)); err != nil {
			return fmt.Errorf("setgid: %w", err)
		}
	}
	if spec.UID != nil {
		if err := syscall.Setuid(int(*spec.UID)); err != nil {
			return fmt.Errorf("setuid: %w", err)
		}
	}
	return syscall.Exec(spec.Argv[0], spec.Argv, spec.Env)
}

func bindMount(m mount) error {
	info, err := os.Stat(m.Source)
	if err != nil {
		return fmt.Errorf("mount source %s: %w", m.Source, err)
	}
	// The mount point must exist; creating it touches the host filesystem, which is harmless
	// (an empty directory or file) and invisible once the bind is on top.
	if info.IsDir() {
		if err := os.MkdirAll(m.Target, 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
	} else {
		if err := os.MkdirAll(filepath.Dir(m.Target), 0o755); err != nil {
			return fmt.Errorf("mount point %s: %w", m.Target, err)
		}
		if _, err := os.Stat(m.Target); os.IsNotExist(err) {
			if err := os.WriteFile(m.Target, nil, 0o644); err != nil {
				return fmt.Errorf("mount point %s: %w", m.Target, err)
			}
		}
	}
	if err := unix.Mount(m.Source, m.Target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind %s on %s: %w", m.Source, m.Target, err)
	}
	if m.ReadOnly {
		if err := unix.Mount("", m.Target, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("read-only %s: %w", m.Target, err)
		}
	}
	return nil
}
