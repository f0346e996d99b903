package main

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// prepare checks what a kubelet would check before starting containers (images, volumes, env) and
// materialises the volumes on the node; anything it cannot honour fails the pod with a clear reason.
func (e *executor) prepare(ctx context.Context, pod *corev1.Pod) (inits, mains []prepared, err error) {
	var waiting []corev1.ContainerStatus
	var bad []string
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if !isOurImage(c.Image) {
			bad = append(bad, c.Image)
			waiting = append(waiting, corev1.ContainerStatus{Name: c.Name, Image: c.Image, State: corev1.ContainerState{
				Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImageNeverPull", Message: imageMessage(c.Image)},
			}})
		}
	}
	if len(bad) > 0 {
		return nil, nil, &podFailure{reason: "ErrImageNeverPull", message: imageMessage(strings.Join(bad, ", ")), waiting: waiting}
	}
	if len(pod.Spec.EphemeralContainers) > 0 {
		return nil, nil, &podFailure{reason: "Unsupported", message: "ephemeral containers are not supported by the test bed"}
	}
	volumes, err := e.materialiseVolumes(ctx, pod)
	if err != nil {
		return nil, nil, err
	}
	for i, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil {
			return nil, nil, &podFailure{reason: "Unsupported", message: "sidecar (restartable init) containers are not supported by the test bed"}
		}
		p, err := e.prepareContainer(ctx, pod, c, volumes, fmt.Sprintf("init-%d", i))
		if err != nil {
			return nil, nil, err
		}
		inits = append(inits, p)
	}
	for _, c := range pod.Spec.Containers {
		p, err := e.prepareContainer(ctx, pod, c, volumes, c.Name)
		if err != nil {
			return nil, nil, err
		}
		mains = append(mains, p)
	}
	return inits, mains, nil
}

func imageMessage(image string) string {
	return fmt.Sprintf("image %q is not available on the test bed's simulated nodes: only images named %s (any registry or tag) exist, mapped to the binary built from this repository", image, imageName)
}

// isOurImage: the last path component of the repository, without tag or digest, is modelpack-operator.
func isOurImage(image string) bool {
	repo, _, _ := strings.Cut(image, "@")
	last := repo[strings.LastIndex(repo, "/")+1:]
	name, _, _ := strings.Cut(last, ":")
	return name == imageName
}

func (e *executor) prepareContainer(ctx context.Context, pod *corev1.Pod, c corev1.Container, volumes map[string]string, dirName string) (prepared, error) {
	fail := func(reason, format string, args ...any) (prepared, error) {
		return prepared{}, &podFailure{reason: reason, message: fmt.Sprintf("container %s: ", c.Name) + fmt.Sprintf(format, args...)}
	}
	env, err := e.containerEnv(ctx, pod, c)
	if err != nil {
		return fail("CreateContainerConfigError", "%v", err)
	}
	lookup := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		lookup[k] = v
	}
	var argv []string
	if len(c.Command) > 0 {
		if path.Base(c.Command[0]) != imageName {
			return fail("StartError", "executable %q not found in image %s (it holds only /%s)", c.Command[0], c.Image, imageName)
		}
		argv = append([]string{e.binary}, expandAll(c.Command[1:], lookup)...)
	} else {
		argv = []string{e.binary}
	}
	argv = append(argv, expandAll(c.Args, lookup)...)
	if _, err := os.Stat(e.binary); err != nil {
		return fail("StartError", "the operator binary %s is missing on this machine (build it first): %v", e.binary, err)
	}

	dir := filepath.Join(e.podDir(pod), "containers", dirName)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return prepared{}, err
	}
	termLog := filepath.Join(dir, "termination-log")
	termPath := c.TerminationMessagePath
	if termPath == "" {
		termPath = "/dev/termination-log"
	}
	spec := containerSpec{Argv: argv, Env: env, WorkingDir: c.WorkingDir}
	for _, m := range c.VolumeMounts {
		src, ok := volumes[m.Name]
		if !ok {
			return fail("CreateContainerConfigError", "volumeMount %q names no volume of the pod", m.Name)
		}
		if m.SubPath != "" || m.SubPathExpr != "" {
			sub := m.SubPath
			if m.SubPathExpr != "" {
				sub = expand(m.SubPathExpr, lookup)
			}
			if filepath.IsAbs(sub) || strings.Split(filepath.Clean(sub), "/")[0] == ".." {
				return fail("CreateContainerConfigError", "subPath %q must be a relative path inside the volume", sub)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return prepared{}, err
				}
			}
		}
		if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
			return fail("CreateContainerConfigError", "mountPropagation %s is not supported by the test bed", *m.MountPropagation)
		}
		spec.Mounts = append(spec.Mounts, mount{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	spec.Mounts = append(spec.Mounts, mount{Source: termLog, Target: termPath})
	sc := effectiveSecurity(pod, c)
	spec.ReadOnlyRoot = sc.readOnlyRoot
	spec.NoNewPrivs = sc.noNewPrivs
	spec.UID, spec.GID, spec.Groups = sc.uid, sc.gid, sc.groups
	if sc.runAsNonRoot && (sc.uid == nil || *sc.uid == 0) {
		return fail("CreateContainerConfigError", "container has runAsNonRoot and image will run as root (set runAsUser)")
	}
	return prepared{container: c, spec: spec, termLog: termLog}, nil
}

type security struct {
	uid, gid                 *int64
	groups                   []int64
	readOnlyRoot, noNewPrivs bool
	runAsNonRoot             bool
}

func effectiveSecurity(pod *corev1.Pod, c corev1.Container) security {
	var s security
	if psc := pod.Spec.SecurityContext; psc != nil {
		s.uid, s.gid = psc.RunAsUser, psc.RunAsGroup
		s.groups = psc.SupplementalGroups
		if psc.FSGroup != nil {
			s.groups = append(s.groups, *psc.FSGroup)
		}
		s.runAsNonRoot = psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	}
	if sc := c.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			s.uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			s.gid = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			s.runAsNonRoot = *sc.RunAsNonRoot
		}
		s.readOnlyRoot = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		s.noNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
	}
	return s
}

var varRef = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand resolves $(VAR) references as the kubelet does; $$ escapes, unknown references stay.
func expand(s string, env map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		if v, ok := env[m[2:len(m)-1]]; ok {
			return v
		}
		return m
	})
}

func expandAll(in []string, env map[string]string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = expand(s, env)
	}
	return out
}

// containerEnv builds the environment a kubelet would give the container: service variables for
// the apiserver, envFrom, then env (later entries win), with $(VAR) expansion.
func (e *executor) containerEnv(ctx context.Context, pod *corev1.Pod, c corev1.Container) ([]string, error) {
	host, port, _ := strings.Cut(e.apiserver, ":")
	vars := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME=" + pod.Name, "HOME=/root"}
	// The kubelet always sets these (enableServiceLinks governs only the other services' variables).
	vars = append(vars, "KUBERNETES_SERVICE_HOST="+host, "KUBERNETES_SERVICE_PORT="+port, "KUBERNETES_SERVICE_PORT_HTTPS="+port)
	values := map[string]string{}
	order := []string{}
	set := func(k, v string) {
		if _, ok := values[k]; !ok {
			order = append(order, k)
		}
		values[k] = v
	}
	for _, kv := range vars {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	for _, from := range c.EnvFrom {
		var data map[string]string
		switch {
		case from.SecretRef != nil:
			s, err := e.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %q: %w", from.SecretRef.Name, err)
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		case from.ConfigMapRef != nil:
			cm, err := e.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if apierrors.IsNotFound(err) && from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("envFrom configMap %q: %w", from.ConfigMapRef.Name, err)
			}
			data = cm.Data
		}
		for k, v := range data {
			set(from.Prefix+k, v)
		}
	}
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			set(ev.Name, expand(ev.Value, values))
			continue
		}
		v, skip, err := e.envValueFrom(ctx, pod, ev.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", ev.Name, err)
		}
		if !skip {
			set(ev.Name, v)
		}
	}
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+values[k])
	}
	return out, nil
}

func (e *executor) envValueFrom(ctx context.Context, pod *corev1.Pod, from *corev1.EnvVarSource) (value string, skip bool, err error) {
	switch {
	case from.FieldRef != nil:
		v, err := fieldValue(pod, from.FieldRef.FieldPath)
		return v, false, err
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		s, err := e.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		optional := ref.Optional != nil && *ref.Optional
		if err != nil {
			return "", optional && apierrors.IsNotFound(err), fmt.Errorf("secret %q: %w", ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			return "", optional, fmt.Errorf("secret %q has no key %q", ref.Name, ref.Key)
		}
		return string(v), false, nil
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		cm, err := e.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		optional := ref.Optional != nil && *ref.Optional
		if err != nil {
			return "", optional && apierrors.IsNotFound(err), fmt.Errorf("configMap %q: %w", ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			return "", optional, fmt.Errorf("configMap %q has no key %q", ref.Name, ref.Key)
		}
		return v, false, nil
	default:
		return "", false, fmt.Errorf("this valueFrom source (resourceFieldRef or fileKeyRef) is not supported by the test bed")
	}
}

var labelRef = regexp.MustCompile(`^metadata\.(labels|annotations)\['(.+)'\]$`)

func fieldValue(pod *corev1.Pod, fieldPath string) (string, error) {
	switch fieldPath {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.podIP", "status.hostIPs", "status.podIPs":
		return "127.0.0.1", nil
	}
	if m := labelRef.FindStringSubmatch(fieldPath); m != nil {
		if m[1] == "labels" {
			return pod.Labels[m[2]], nil
		}
		return pod.Annotations[m[2]], nil
	}
	return "", fmt.Errorf("fieldRef %q is not supported", fieldPath)
}

// materialiseVolumes creates every volume on the node and returns name → host path.
func (e *executor) materialiseVolumes(ctx context.Context, pod *corev1.Pod) (map[string]string, error) {
	out := map[string]string{}
	for _, v := range pod.Spec.Volumes {
		dir := filepath.Join(e.podDir(pod), "volumes", v.Name)
		var err error
		switch {
		case v.HostPath != nil:
			dir, err = e.hostPath(pod, v.HostPath)
		case v.EmptyDir != nil:
			err = os.MkdirAll(dir, 0o777)
		case v.Secret != nil, v.ConfigMap != nil, v.Projected != nil, v.DownwardAPI != nil:
			err = e.writeFiles(ctx, pod, v, dir)
		default:
			err = &podFailure{reason: "FailedMount", message: fmt.Sprintf("volume %q: this volume type is not supported by the test bed (hostPath, emptyDir, secret, configMap, projected and downwardAPI are)", v.Name)}
		}
		if err != nil {
			return nil, err
		}
		out[v.Name] = dir
	}
	return out, nil
}

func (e *executor) hostPath(pod *corev1.Pod, hp *corev1.HostPathVolumeSource) (string, error) {
	clean := filepath.Clean("/" + hp.Path)
	dir := filepath.Join(e.nodeRoot(pod.Spec.NodeName), clean)
	kind := corev1.HostPathUnset
	if hp.Type != nil {
		kind = *hp.Type
	}
	fail := func(msg string) (string, error) {
		return "", &podFailure{reason: "FailedMount", message: fmt.Sprintf("hostPath %s: %s", hp.Path, msg)}
	}
	info, statErr := os.Stat(dir)
	switch kind {
	case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate:
		if statErr != nil {
			// A real kubelet would fail an unset-type path that is missing only when the runtime
			// cannot create it; creating it keeps the simulated node's root sparse.
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return "", err
			}
		}
	case corev1.HostPathDirectory:
		if statErr != nil || !info.IsDir() {
			return fail("is not a directory on the node")
		}
	case corev1.HostPathFileOrCreate:
		if statErr != nil {
			if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
				return "", err
			}
			if err := os.WriteFile(dir, nil, 0o644); err != nil {
				return "", err
			}
		}
	case corev1.HostPathFile:
		if statErr != nil || info.IsDir() {
			return fail("is not a file on the node")
		}
	default:
		return fail(fmt.Sprintf("type %s is not supported by the test bed", kind))
	}
	return dir, nil
}

type file struct {
	path string
	data []byte
	mode os.FileMode
}

// writeFiles materialises secret, configMap, downwardAPI and projected volumes, retrying for a while
// when a referenced object does not exist yet (a kubelet keeps retrying the mount).
func (e *executor) writeFiles(ctx context.Context, pod *corev1.Pod, v corev1.Volume, dir string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		files, err := e.volumeFiles(ctx, pod, v)
		if err == nil {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			for _, f := range files {
				clean := filepath.Clean(f.path)
				if filepath.IsAbs(clean) || strings.HasPrefix(clean, "..") {
					return &podFailure{reason: "FailedMount", message: fmt.Sprintf("volume %q: item path %q leaves the volume", v.Name, f.path)}
				}
				target := filepath.Join(dir, clean)
				if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
					return err
				}
				if err := os.WriteFile(target, f.data, f.mode); err != nil {
					return err
				}
				if err := os.Chmod(target, f.mode); err != nil {
					return err
				}
			}
			return nil
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) || ctx.Err() != nil {
			return &podFailure{reason: "FailedMount", message: fmt.Sprintf("volume %q: %v", v.Name, err)}
		}
		time.Sleep(time.Second)
	}
}

func mode(def *int32, item *int32) os.FileMode {
	if item != nil {
		return os.FileMode(*item)
	}
	if def != nil {
		return os.FileMode(*def)
	}
	return 0o644
}

func (e *executor) volumeFiles(ctx context.Context, pod *corev1.Pod, v corev1.Volume) ([]file, error) {
	switch {
	case v.Secret != nil:
		return e.secretFiles(ctx, pod, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, v.Secret.DefaultMode)
	case v.ConfigMap != nil:
		return e.configMapFiles(ctx, pod, v.ConfigMap.Name, v.ConfigMap.Items, v.ConfigMap.Optional, v.ConfigMap.DefaultMode)
	case v.DownwardAPI != nil:
		return downwardFiles(pod, v.DownwardAPI.Items, v.DownwardAPI.DefaultMode)
	}
	var files []file
	p := v.Projected
	for _, src := range p.Sources {
		var more []file
		var err error
		switch {
		case src.Secret != nil:
			more, err = e.secretFiles(ctx, pod, src.Secret.Name, src.Secret.Items, src.Secret.Optional, p.DefaultMode)
		case src.ConfigMap != nil:
			more, err = e.configMapFiles(ctx, pod, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, p.DefaultMode)
		case src.DownwardAPI != nil:
			more, err = downwardFiles(pod, src.DownwardAPI.Items, p.DefaultMode)
		case src.ServiceAccountToken != nil:
			more, err = e.tokenFile(ctx, pod, src.ServiceAccountToken, p.DefaultMode)
		default:
			err = fmt.Errorf("projected source is not supported by the test bed")
		}
		if err != nil {
			return nil, err
		}
		files = append(files, more...)
	}
	return files, nil
}

func itemFiles(data map[string][]byte, items []corev1.KeyToPath, def *int32, what string) ([]file, error) {
	var files []file
	if len(items) == 0 {
		for k, d := range data {
			files = append(files, file{path: k, data: d, mode: mode(def, nil)})
		}
		return files, nil
	}
	for _, it := range items {
		d, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("%s has no key %q", what, it.Key)
		}
		files = append(files, file{path: it.Path, data: d, mode: mode(def, it.Mode)})
	}
	return files, nil
}

func (e *executor) secretFiles(ctx context.Context, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, def *int32) ([]file, error) {
	s, err := e.cs.CoreV1().Secrets(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil, nil
		}
		return nil, err
	}
	return itemFiles(s.Data, items, def, "secret "+strconv.Quote(name))
}

func (e *executor) configMapFiles(ctx context.Context, pod *corev1.Pod, name string, items []corev1.KeyToPath, optional *bool, def *int32) ([]file, error) {
	cm, err := e.cs.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) && optional != nil && *optional {
			return nil, nil
		}
		return nil, err
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return itemFiles(data, items, def, "configMap "+strconv.Quote(name))
}

func downwardFiles(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, def *int32) ([]file, error) {
	var files []file
	for _, it := range items {
		if it.FieldRef == nil {
			return nil, fmt.Errorf("downwardAPI item %q: only fieldRef is supported by the test bed", it.Path)
		}
		v, err := fieldValue(pod, it.FieldRef.FieldPath)
		if err != nil {
			return nil, err
		}
		files = append(files, file{path: it.Path, data: []byte(v), mode: mode(def, it.Mode)})
	}
	return files, nil
}

// tokenFile requests a pod-bound service account token, as the kubelet does for projected volumes.
func (e *executor) tokenFile(ctx context.Context, pod *corev1.Pod, src *corev1.ServiceAccountTokenProjection, def *int32) ([]file, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: src.ExpirationSeconds,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	tr, err := e.cs.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("service account token for %s: %w", sa, err)
	}
	m := os.FileMode(0o600)
	if def != nil {
		m = os.FileMode(*def)
	}
	return []file{{path: src.Path, data: []byte(tr.Status.Token), mode: m}}, nil
}
