package main

import (
	"context"
	"flag"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 100, 200
	return kubernetes.NewForConfig(cfg)
}

// runNodes creates each node with realistic labels, marks it Ready and removes the not-ready taint
// that TaintNodesByCondition admission adds (no node-lifecycle controller runs to remove it).
func runNodes(args []string) error {
	fs := flag.NewFlagSet("nodes", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "admin kubeconfig")
	names := fs.String("names", "", "comma-separated node names")
	labels := fs.String("labels", "", "comma-separated key=value labels added to every node")
	_ = fs.Parse(args)
	extra := map[string]string{}
	for _, kv := range strings.Split(*labels, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("label %q: expected key=value", kv)
		}
		extra[k] = v
	}
	cs, err := clientFor(*kubeconfig)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, name := range strings.Split(*names, ",") {
		if err := ensureNode(ctx, cs, name, i, extra); err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
	}
	return nil
}

func ensureNode(ctx context.Context, cs *kubernetes.Clientset, name string, index int, extra map[string]string) error {
	zones := []string{"zone-a", "zone-b", "zone-c"}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		simulatedLabel:                     "true",
		"kubernetes.io/hostname":           name,
		"kubernetes.io/os":                 "linux",
		"kubernetes.io/arch":               "amd64",
		"node.kubernetes.io/instance-type": "bed.simulated",
		"topology.kubernetes.io/region":    "bed",
		"topology.kubernetes.io/zone":      zones[index%len(zones)],
	}}}
	for k, v := range extra {
		node.Labels[k] = v
	}
	_, err := cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	// Status first: the scheduler needs Ready and allocatable resources.
	for attempt := 0; ; attempt++ {
		current, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		current.Status.Conditions = []corev1.NodeCondition{
			{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", Message: "simulated by the test bed's node executor", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeMemoryPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientMemory", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodeDiskPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasNoDiskPressure", LastHeartbeatTime: now, LastTransitionTime: now},
			{Type: corev1.NodePIDPressure, Status: corev1.ConditionFalse, Reason: "KubeletHasSufficientPID", LastHeartbeatTime: now, LastTransitionTime: now},
		}
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:              resource.MustParse("8"),
			corev1.ResourceMemory:           resource.MustParse("32Gi"),
			corev1.ResourcePods:             resource.MustParse("110"),
			corev1.ResourceEphemeralStorage: resource.MustParse("200Gi"),
		}
		current.Status.Capacity, current.Status.Allocatable = capacity, capacity
		current.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}, {Type: corev1.NodeHostName, Address: name}}
		current.Status.NodeInfo = corev1.NodeSystemInfo{KubeletVersion: "v1.37.2-bed", OperatingSystem: "linux", Architecture: "amd64", ContainerRuntimeVersion: "bedctl://executor"}
		_, err = cs.CoreV1().Nodes().UpdateStatus(ctx, current, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 10 {
			continue
		}
		if err != nil {
			return err
		}
		break
	}
	for attempt := 0; ; attempt++ {
		current, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		var kept []corev1.Taint
		for _, t := range current.Spec.Taints {
			if !strings.HasPrefix(t.Key, "node.kubernetes.io/") {
				kept = append(kept, t)
			}
		}
		if len(kept) == len(current.Spec.Taints) {
			return nil
		}
		current.Spec.Taints = kept
		_, err = cs.CoreV1().Nodes().Update(ctx, current, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) && attempt < 10 {
			continue
		}
		return err
	}
}
