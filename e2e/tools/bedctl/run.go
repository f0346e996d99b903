package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const imageName = "modelpack-operator"

// podFailure fails a pod before any container starts, with a kubelet-like reason.
type podFailure struct {
	reason, message string
	waiting         []corev1.ContainerStatus // set for image problems (ErrImageNeverPull)
}

func (f *podFailure) Error() string { return f.reason + ": " + f.message }

// prepared is everything needed to start one container.
type prepared struct {
	container corev1.Container
	spec      containerSpec
	termLog   string // host path of the termination-log file
}

func (e *executor) run(ctx context.Context, pod *corev1.Pod) {
	started := metav1.Now()
	if d := pod.Spec.ActiveDeadlineSeconds; d != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, started.Add(time.Duration(*d)*time.Second))
		defer cancel()
	}
	inits, mains, err := e.prepare(ctx, pod)
	if err != nil {
		var pf *podFailure
		if !errors.As(err, &pf) {
			pf = &podFailure{reason: "CreateContainerConfigError", message: err.Error()}
		}
		e.finish(ctx, pod, corev1.PodFailed, pf.reason, pf.message, pf.waiting)
		return
	}
	err = e.updateStatus(ctx, pod, func(st *corev1.PodStatus) {
		st.Phase = corev1.PodRunning
		st.StartTime = &started
		st.HostIP, st.PodIP = "127.0.0.1", "127.0.0.1"
		st.HostIPs, st.PodIPs = []corev1.HostIP{{IP: "127.0.0.1"}}, []corev1.PodIP{{IP: "127.0.0.1"}}
		setPodConditions(st, true, "")
		st.ContainerStatuses = nil
		for _, p := range mains {
			st.ContainerStatuses = append(st.ContainerStatuses, corev1.ContainerStatus{
				Name: p.container.Name, Image: p.container.Image, ImageID: "bed://" + e.binary, Ready: true, Started: ptr(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
			})
		}
	})
	if err != nil {
		e.finish(ctx, pod, corev1.PodFailed, "StatusUpdateFailed", err.Error(), nil)
		return
	}
	for _, p := range inits {
		st := e.runWithRestarts(ctx, pod, p)
		if st.State.Terminated.ExitCode != 0 {
			e.finish(ctx, pod, corev1.PodFailed, "InitContainerFailed", fmt.Sprintf("init container %s exited %d", p.container.Name, st.State.Terminated.ExitCode), nil)
			return
		}
	}
	statuses := make([]corev1.ContainerStatus, len(mains))
	var wg sync.WaitGroup
	for i, p := range mains {
		wg.Add(1)
		go func() {
			defer wg.Done()
			statuses[i] = e.runWithRestarts(ctx, pod, p)
		}()
	}
	wg.Wait()
	phase, reason, message := corev1.PodSucceeded, "", ""
	for _, st := range statuses {
		if st.State.Terminated.ExitCode != 0 {
			phase = corev1.PodFailed
		}
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		phase, reason, message = corev1.PodFailed, "DeadlineExceeded", fmt.Sprintf("Pod was active on the node longer than the specified deadline (%ds)", *pod.Spec.ActiveDeadlineSeconds)
	}
	if ctx.Err() != nil && reason == "" {
		// Killed because the pod is being deleted (confirmDeletion takes over) or the executor stops.
		return
	}
	e.finish(ctx, pod, phase, reason, message, statuses)
}

func ptr[T any](v T) *T { return &v }

// runWithRestarts runs a container once, or again after failures when restartPolicy is OnFailure.
func (e *executor) runWithRestarts(ctx context.Context, pod *corev1.Pod, p prepared) corev1.ContainerStatus {
	var restarts int32
	for attempt := 0; ; attempt++ {
		st := e.runContainer(ctx, pod, p, attempt)
		st.RestartCount = restarts
		if st.State.Terminated.ExitCode == 0 || pod.Spec.RestartPolicy != corev1.RestartPolicyOnFailure || ctx.Err() != nil {
			return st
		}
		restarts++
		backoff := time.Duration(1<<min(attempt, 4)) * time.Second
		select {
		case <-time.After(backoff):
		case <-ctx.Done():
			return st
		}
	}
}

func (e *executor) runContainer(ctx context.Context, pod *corev1.Pod, p prepared, attempt int) corev1.ContainerStatus {
	started := metav1.Now()
	status := func(code int32, reason, message string) corev1.ContainerStatus {
		return corev1.ContainerStatus{
			Name: p.container.Name, Image: p.container.Image, ImageID: "bed://" + e.binary, Started: ptr(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: code, Reason: reason, Message: message, StartedAt: started, FinishedAt: metav1.Now(),
			}},
		}
	}
	logPath := e.logPath(pod, p.container.Name, attempt)
	if err := os.MkdirAll(filepath.Dir(logPath), 0o755); err != nil {
		return status(128, "StartError", err.Error())
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return status(128, "StartError", err.Error())
	}
	defer logFile.Close()
	if err := os.WriteFile(p.termLog, nil, 0o666); err != nil {
		return status(128, "StartError", err.Error())
	}
	specPath := filepath.Join(filepath.Dir(p.termLog), "spec.json")
	specJSON, _ := json.Marshal(p.spec)
	if err := os.WriteFile(specPath, specJSON, 0o600); err != nil {
		return status(128, "StartError", err.Error())
	}
	cmd := exec.Command(e.self, "container-init", specPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = []string{}
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return status(128, "StartError", err.Error())
	}
	exited := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
			grace := int64(10)
			if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && *g < grace {
				grace = *g
			}
			select {
			case <-exited:
			case <-time.After(time.Duration(grace) * time.Second):
				_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			}
		case <-exited:
		}
	}()
	waitErr := cmd.Wait()
	close(exited)
	code := int32(0)
	if waitErr != nil {
		var exitErr *exec.ExitError
		if !errors.As(waitErr, &exitErr) {
			return status(128, "StartError", waitErr.Error())
		}
		ws, _ := exitErr.Sys().(syscall.WaitStatus)
		switch {
		case ws.Signaled():
			code = 128 + int32(ws.Signal())
		default:
			code = int32(ws.ExitStatus())
		}
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	return status(code, reason, terminationMessage(p, logPath, code))
}

// terminationMessage reads the container's termination-log (at most 4096 bytes, as the kubelet
// does), falling back to the log's tail when the policy asks for it.
func terminationMessage(p prepared, logPath string, code int32) string {
	msg := readCapped(p.termLog, 4096)
	if msg == "" && code != 0 && p.container.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		data, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(lines) > 80 {
			lines = lines[len(lines)-80:]
		}
		msg = strings.Join(lines, "\n")
		if len(msg) > 2048 {
			msg = msg[len(msg)-2048:]
		}
	}
	return msg
}

func readCapped(path string, limit int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	buf := make([]byte, limit)
	n, _ := f.Read(buf)
	return string(buf[:n])
}
