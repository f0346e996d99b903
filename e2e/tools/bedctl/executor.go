package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// executor stands in for the kubelets of the simulated nodes: it runs every pod bound to one of them
// as local processes of the operator binary, each container in its own mount namespace with the
// pod's volumes bind-mounted at their mountPaths, and writes pod status as a kubelet would.
type executor struct {
	cs        *kubernetes.Clientset
	state     string
	nodes     listersv1.NodeLister
	binary    string
	apiserver string // host:port the in-pod KUBERNETES_SERVICE_* variables point at
	self      string // this executable, re-run as `container-init` inside each container

	mu   sync.Mutex
	pods map[types.UID]*runningPod
}

type runningPod struct {
	cancel context.CancelFunc // kills the pod's processes
	done   chan struct{}      // closed when the pod's goroutine has finished
}

func runExecutor(args []string) error {
	fs := flag.NewFlagSet("executor", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "admin kubeconfig")
	state := fs.String("state", "", "test bed state directory")
	binary := fs.String("binary", "", "the operator binary that images named modelpack-operator map to")
	apiserver := fs.String("apiserver", "", "host:port of the apiserver, for in-pod clients")
	_ = fs.Parse(args)
	cs, err := clientFor(*kubeconfig)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	e := &executor{cs: cs, state: *state, binary: *binary, apiserver: *apiserver, self: self, pods: map[types.UID]*runningPod{}}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = "spec.nodeName!="
	}))
	// Nodes come and go while the bed runs (tests add and remove them): every node labelled as
	// simulated is served, whenever it was created.
	nodeFactory := informers.NewSharedInformerFactory(cs, 0)
	e.nodes = nodeFactory.Core().V1().Nodes().Lister()
	nodeFactory.Start(ctx.Done())
	nodeFactory.WaitForCacheSync(ctx.Done())
	informer := factory.Core().V1().Pods().Informer()
	_, err = informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj interface{}) { e.observe(ctx, obj) },
		UpdateFunc: func(_, obj interface{}) { e.observe(ctx, obj) },
	})
	if err != nil {
		return err
	}
	log.Printf("executor: running pods for nodes labelled %s=true with %s", simulatedLabel, *binary)
	factory.Start(ctx.Done())
	<-ctx.Done()
	// Kill every container and wait for it, so that nothing the bed started outlives it.
	e.mu.Lock()
	var waits []chan struct{}
	for _, p := range e.pods {
		p.cancel()
		waits = append(waits, p.done)
	}
	e.mu.Unlock()
	for _, w := range waits {
		<-w
	}
	log.Printf("executor: stopped")
	return nil
}

func (e *executor) observe(ctx context.Context, obj interface{}) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	running := e.pods[pod.UID]
	if running == nil && !e.simulated(pod.Spec.NodeName) {
		return
	}
	if pod.DeletionTimestamp != nil {
		// A kubelet kills the containers, then confirms the deletion; without that the pod would
		// stay Terminating forever and the garbage collector could never finish.
		if running != nil {
			running.cancel()
		}
		go e.confirmDeletion(ctx, pod, running)
		return
	}
	if running != nil {
		return
	}
	switch pod.Status.Phase {
	case corev1.PodSucceeded, corev1.PodFailed:
		return
	case corev1.PodRunning:
		// Running but not ours: the executor restarted under it. Its processes are gone.
		go e.finish(ctx, pod, corev1.PodFailed, "NodeExecutorRestarted", "the test bed's node executor restarted while the pod ran", nil)
		e.pods[pod.UID] = &runningPod{cancel: func() {}, done: closedChan()}
		return
	}
	podCtx, cancel := context.WithCancel(ctx)
	p := &runningPod{cancel: cancel, done: make(chan struct{})}
	e.pods[pod.UID] = p
	go func() {
		defer close(p.done)
		e.run(podCtx, pod.DeepCopy())
	}()
}

// simulatedLabel marks the nodes this executor is the kubelet of.
const simulatedLabel = "bed.modelpack.dev/simulated"

func (e *executor) simulated(nodeName string) bool {
	node, err := e.nodes.Get(nodeName)
	return err == nil && node.Labels[simulatedLabel] == "true"
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func (e *executor) confirmDeletion(ctx context.Context, pod *corev1.Pod, running *runningPod) {
	if running != nil {
		select {
		case <-running.done:
		case <-ctx.Done():
			return
		}
	}
	zero := int64(0)
	uid := pod.UID
	err := e.cs.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		log.Printf("executor: confirming deletion of %s/%s: %v", pod.Namespace, pod.Name, err)
		return
	}
	_ = os.RemoveAll(e.podDir(pod))
	e.mu.Lock()
	delete(e.pods, pod.UID)
	e.mu.Unlock()
}

// nodeRoot is the simulated node's filesystem root: hostPath P on node N is nodeRoot(N)/P.
func (e *executor) nodeRoot(node string) string {
	return filepath.Join(e.state, "nodes", node)
}

// podDir is where a kubelet keeps a pod's volumes and termination files on its node.
func (e *executor) podDir(pod *corev1.Pod) string {
	return filepath.Join(e.nodeRoot(pod.Spec.NodeName), "var/lib/kubelet/pods", string(pod.UID))
}

// logPath is where a kubelet writes a container's log on its node.
func (e *executor) logPath(pod *corev1.Pod, container string, attempt int) string {
	dir := fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)
	return filepath.Join(e.nodeRoot(pod.Spec.NodeName), "var/log/pods", dir, container, fmt.Sprintf("%d.log", attempt))
}

// updateStatus applies mutate to the newest pod and writes its status, retrying on conflict.
func (e *executor) updateStatus(ctx context.Context, pod *corev1.Pod, mutate func(*corev1.PodStatus)) error {
	for attempt := 0; attempt < 20; attempt++ {
		current, err := e.cs.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if current.UID != pod.UID {
			return fmt.Errorf("pod %s/%s was replaced", pod.Namespace, pod.Name)
		}
		mutate(&current.Status)
		_, err = e.cs.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, current, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		return err
	}
	return fmt.Errorf("pod %s/%s: status update kept conflicting", pod.Namespace, pod.Name)
}

func podCondition(t corev1.PodConditionType, status bool, reason string) corev1.PodCondition {
	s := corev1.ConditionFalse
	if status {
		s = corev1.ConditionTrue
	}
	return corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: metav1.Now()}
}

func setPodConditions(st *corev1.PodStatus, ready bool, reason string) {
	st.Conditions = []corev1.PodCondition{
		podCondition(corev1.PodReadyToStartContainers, true, ""),
		podCondition(corev1.PodInitialized, true, ""),
		podCondition(corev1.ContainersReady, ready, reason),
		podCondition(corev1.PodReady, ready, reason),
		podCondition(corev1.PodScheduled, true, ""),
	}
}

// finish writes the terminal phase (never touched again, like a kubelet with restartPolicy Never).
func (e *executor) finish(ctx context.Context, pod *corev1.Pod, phase corev1.PodPhase, reason, message string, statuses []corev1.ContainerStatus) {
	err := e.updateStatus(context.WithoutCancel(ctx), pod, func(st *corev1.PodStatus) {
		st.Phase = phase
		st.Reason = reason
		st.Message = message
		setPodConditions(st, false, "PodCompleted")
		if statuses != nil {
			st.ContainerStatuses = statuses
		}
		if st.StartTime == nil {
			now := metav1.Now()
			st.StartTime = &now
		}
		st.HostIP, st.PodIP = "127.0.0.1", "127.0.0.1"
		st.HostIPs, st.PodIPs = []corev1.HostIP{{IP: "127.0.0.1"}}, []corev1.PodIP{{IP: "127.0.0.1"}}
	})
	if err != nil && !apierrors.IsNotFound(err) {
		log.Printf("executor: writing final status of %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	log.Printf("executor: %s/%s on %s: %s %s %s", pod.Namespace, pod.Name, pod.Spec.NodeName, phase, reason, message)
}
