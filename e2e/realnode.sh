# The bed's real node: a kubelet and containerd (with Debian's runc and CNI plugins) that run pods as
# users' clusters do: real containers, capabilities dropped, memory cgroups, pod networks, image pulls.
# Sourced by e2e/cluster, which provides state, tools, start, stop_one, alive, log and die.
#
# Network (only loopback and namespaces the bed creates are ever addressed):
#   - one network namespace, the node's, holds the kubelet, containerd, the pods' bridge and the
#     address every bed server is reached at from the node (REAL_NODE_IP);
#   - the bed's servers stay on host loopback; `bedctl forward` listens on REAL_NODE_IP:PORT inside
#     the node namespace (and on the apiserver's service address, 10.0.0.1:443) and dials
#     127.0.0.1:PORT, so a pod and a host process use the same registry address;
#   - the host reaches the namespace through a veth pair; the namespace has no default route, so a
#     pod can reach nothing but the namespace itself, other pods and the host's end of the veth.
# Cgroups (v1 here): everything the node runs (containerd, shims, kubelet, pods) lives below one
# cgroup per hierarchy, REAL_NODE_CGROUP, so `down` finds and stops every process by it.

REAL_NODE=${MODELPACK_E2E_REAL_NODE_NAME:-bed-real-node}
REAL_NODE_HOST_IP=10.233.254.1
REAL_NODE_IP=10.233.254.2
REAL_NODE_POD_SUBNET=10.233.0.0/24
REAL_NODE_POD_GATEWAY=10.233.0.1
REAL_NODE_SERVICE_IP=10.0.0.1
# Every address the real node uses is in here; while the bed is up this range is a blackhole route
# on the host unless a more specific route (the veth's /30, the pods' /24) takes it, so no packet
# for it ever leaves by the default route, even when a route of the bed goes missing.
REAL_NODE_RANGE=10.233.0.0/16
real_node_id=$(printf '%s' "$state" | sha256sum | cut -c1-8)
REAL_NODE_NETNS=mpbed-$real_node_id
REAL_NODE_VETH=mpb$real_node_id
REAL_NODE_CGROUP=mpbed-$real_node_id
rn=$state/realnode

# The v1 hierarchies (one directory per mount, symlinked co-mounts counted once).
cgroup_hierarchies() {
  local d seen=" "
  for d in /sys/fs/cgroup/*/; do
    d=$(readlink -f "$d")
    [ -f "$d/cgroup.procs" ] || continue
    [[ $seen == *" $d "* ]] && continue
    seen+="$d "
    echo "$d"
  done
}

real_node_cgroups_up() {
  local h sub
  for h in $(cgroup_hierarchies); do
    for sub in "" /runtime; do
      mkdir -p "$h/$REAL_NODE_CGROUP$sub" || return 1
      if [ -f "$h/cpuset.cpus" ]; then
        # cpuset groups start empty; a process cannot join one until it has CPUs and memory nodes.
        cat "$h/$REAL_NODE_CGROUP$sub/../cpuset.cpus" >"$h/$REAL_NODE_CGROUP$sub/cpuset.cpus"
        cat "$h/$REAL_NODE_CGROUP$sub/../cpuset.mems" >"$h/$REAL_NODE_CGROUP$sub/cpuset.mems"
      fi
    done
  done
}

# Prints the pids of every process in the node's cgroups, in any hierarchy.
real_node_pids() {
  local h
  for h in $(cgroup_hierarchies); do
    [ -d "$h/$REAL_NODE_CGROUP" ] || continue
    find "$h/$REAL_NODE_CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null || true
  done | sort -un
}

real_node_net_up() {
  # One real node per machine: its addresses are fixed, and a second bed's would shadow them; nor
  # may they overlap anything this machine routes or holds.
  if [ -n "$(ip route show root "$REAL_NODE_RANGE")$(ip route show match "$REAL_NODE_RANGE" | grep -v '^default')$(ip -4 addr show to "$REAL_NODE_RANGE")" ]; then
    log "$REAL_NODE_RANGE is routed or assigned already (another bed's real node on this machine?): $(ip route show root "$REAL_NODE_RANGE" | head -n 1)"
    return 1
  fi
  local inns=(ip netns exec "$REAL_NODE_NETNS")
  ip route add blackhole "$REAL_NODE_RANGE" || return 1
  # This bed owns the routes from here on; only the bed that owns them removes them.
  touch "$state/realnode.routes"
  ip netns add "$REAL_NODE_NETNS" &&
    ip link add "$REAL_NODE_VETH" type veth peer name node0 netns "$REAL_NODE_NETNS" &&
    ip addr add "$REAL_NODE_HOST_IP/30" dev "$REAL_NODE_VETH" &&
    ip link set "$REAL_NODE_VETH" up &&
    "${inns[@]}" ip addr add "$REAL_NODE_IP/30" dev node0 &&
    "${inns[@]}" ip link set node0 up &&
    "${inns[@]}" ip link set lo up &&
    # The apiserver's service address, so that pods' in-cluster configuration works unchanged.
    "${inns[@]}" ip addr add "$REAL_NODE_SERVICE_IP/32" dev lo &&
    # Host -> pod traffic (reading a pod's /metrics) is routed through the namespace.
    "${inns[@]}" sysctl -qw net.ipv4.ip_forward=1 &&
    ip route add "$REAL_NODE_POD_SUBNET" via "$REAL_NODE_IP" dev "$REAL_NODE_VETH"
}

real_node_net_down() {
  ip route del "$REAL_NODE_POD_SUBNET" dev "$REAL_NODE_VETH" 2>/dev/null || true
  ip link del "$REAL_NODE_VETH" 2>/dev/null || true
  ip netns del "$REAL_NODE_NETNS" 2>/dev/null || true
  # Last, and only by the bed that added it: while anything of the node may still be addressed,
  # the range stays a blackhole.
  if [ -f "$state/realnode.routes" ]; then
    ip route del blackhole "$REAL_NODE_RANGE" 2>/dev/null || true
    rm -f "$state/realnode.routes"
  fi
}

# real_node_forward PORT...: one forwarder for every listening server of the bed.
real_node_forward() {
  local rules=() p
  for p in "$@"; do rules+=("$REAL_NODE_IP:$p=127.0.0.1:$p"); done
  rules+=("$REAL_NODE_SERVICE_IP:443=127.0.0.1:$api_port")
  start node-forward "$tools/bedctl" forward --netns "/run/netns/$REAL_NODE_NETNS" "${rules[@]}"
  local deadline=$((SECONDS + 20))
  until grep -q forwarding "$state/logs/node-forward.log" 2>/dev/null; do
    alive node-forward || die "node-forward exited: $(tail -n 5 "$state/logs/node-forward.log")"
    [ $SECONDS -lt $deadline ] || die "node-forward not listening after 20s"
    sleep 0.2
  done
}

# The images the node needs besides the operator's: one small busybox image (Debian's
# busybox-static), used as the pod sandbox ("pause") and by the tests' serving pods.
real_node_images() {
  local root=$rn/busybox-root
  rm -rf "$root" && mkdir -p "$root/bin" "$root/tmp"
  cp /bin/busybox "$root/bin/busybox"
  local a
  for a in sh sleep cat ls find sha256sum wc stat test echo head tail mkdir touch env id true false readlink; do
    ln -s busybox "$root/bin/$a"
  done
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$root.tar" .
  local ref=127.0.0.1:$reg_port/bed/busybox:1
  "$tools/crane" append --insecure --oci-empty-base -f "$root.tar" -t "$ref" >/dev/null 2>>"$state/logs/realnode-images.log" || return 1
  "$tools/crane" mutate --insecure "$ref" --entrypoint /bin/sleep --cmd 2147483647 --set-platform linux/amd64 \
    -t "$ref" >/dev/null 2>>"$state/logs/realnode-images.log" || return 1
  rm -rf "$root" "$root.tar"
  REAL_NODE_BUSYBOX=$REAL_NODE_IP:$reg_port/bed/busybox:1
}

# hosts.toml for each registry the node pulls from (containerd's config_path layout).
real_node_registry_hosts() { # HOST:PORT [CA]
  local dir=$rn/containerd/certs.d/$1
  mkdir -p "$dir"
  if [ -n "${2:-}" ]; then
    printf 'server = "https://%s"\n[host."https://%s"]\n  capabilities = ["pull", "resolve"]\n  ca = "%s"\n' \
      "$1" "$1" "$2" >"$dir/hosts.toml"
  else
    printf 'server = "http://%s"\n[host."http://%s"]\n  capabilities = ["pull", "resolve"]\n  skip_verify = true\n' \
      "$1" "$1" >"$dir/hosts.toml"
  fi
}

real_node_containerd_config() {
  mkdir -p "$rn/containerd/root" "$rn/containerd/state" "$rn/cni/net.d" "$rn/cni/ipam"
  cat >"$rn/containerd/config.toml" <<EOF
version = 4
root = "$rn/containerd/root"
state = "$rn/containerd/state"
imports = []
# Plugins that would write outside the state directory or need what this machine lacks.
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.nri.v1.nri", "io.containerd.image-verifier.v1.bindir", "io.containerd.snapshotter.v1.blockfile", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.erofs", "io.containerd.differ.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[plugins.'io.containerd.server.v1.grpc']
  address = "$rn/containerd.sock"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$rn/containerd.sock.ttrpc"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$REAL_NODE_BUSYBOX"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$rn/containerd/certs.d"

[plugins.'io.containerd.cri.v1.runtime']
  # Root here lacks CAP_SYS_RESOURCE: runc may not lower oom_score_adj below its own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        # runc's state beside the node's, not in /run/containerd/runc where a host containerd keeps its own.
        Root = "$rn/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$rn/cni/net.d"

[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF
  cat >"$rn/cni/net.d/10-bed.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "bed",
  "plugins": [
    {
      "type": "bridge", "bridge": "bed0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$rn/cni/ipam",
        "ranges": [[{"subnet": "$REAL_NODE_POD_SUBNET", "gateway": "$REAL_NODE_POD_GATEWAY"}]],
        "routes": [{"dst": "$REAL_NODE_IP/32"}, {"dst": "$REAL_NODE_SERVICE_IP/32"}, {"dst": "$REAL_NODE_HOST_IP/32"}]
      }
    }
  ]
}
EOF
}

real_node_kubelet_config() {
  local pki=$state/pki
  mkdir -p "$rn/kubelet" "$rn/pod-logs"
  # No name server: pods of the bed address everything by IP, and a pod must not query the host's.
  : >"$rn/resolv.conf"
  (cd "$pki" && openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=system:node:$REAL_NODE" \
    -keyout kubelet.key -out kubelet.csr 2>/dev/null &&
    printf 'extendedKeyUsage=clientAuth\n' >kubelet.ext &&
    openssl x509 -req -in kubelet.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile kubelet.ext \
      -out kubelet.crt 2>/dev/null && rm -f kubelet.csr kubelet.ext ca.srl) || return 1
  sed -e "s#server: https://.*#server: https://$REAL_NODE_IP:$api_port#" \
    -e "s#client-certificate-data: .*#client-certificate-data: $(base64 -w0 <"$pki/kubelet.crt")#" \
    -e "s#client-key-data: .*#client-key-data: $(base64 -w0 <"$pki/kubelet.key")#" \
    "$state/kubeconfig" >"$rn/kubelet.kubeconfig"
  cat >"$rn/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$REAL_NODE_CGROUP
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$rn/containerd.sock
address: $REAL_NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
resolvConf: $rn/resolv.conf
podLogsDir: $rn/pod-logs
failSwapOn: false
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
featureGates: {ImageVolume: true}
EOF
}

# in_node NAME CMD...: starts CMD in the node's network namespace and cgroups.
in_node() {
  local name=$1; shift
  local procs=() h
  for h in $(cgroup_hierarchies); do procs+=("$h/$REAL_NODE_CGROUP/runtime/cgroup.procs"); done
  # The shell joins the cgroups first, so that whatever CMD starts (shims, containers) is inside.
  start "$name" bash -c 'for f in $CGROUP_PROCS; do echo $$ >"$f"; done; exec "$@"' in_node \
    nsenter --net="/run/netns/$REAL_NODE_NETNS" -- "$@"
}

real_node_up() { # needs api_port, reg_port and the other ports of e2e/cluster's up
  command -v runc >/dev/null || die "real node: runc not found (Debian package runc)"
  [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] ||
    die "real node: CNI plugins not found in /usr/lib/cni (Debian package containernetworking-plugins)"
  [ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 ||
    die "real node: /bin/busybox is missing or not static (Debian package busybox-static)"
  [ -x "$tools/kubelet" ] && [ -x "$tools/containerd" ] || die "real node: kubelet or containerd missing in $tools"
  log "real node $REAL_NODE: kubelet and containerd (runc $(runc --version | head -n1 | cut -d' ' -f3))"
  real_node_images || die "real node: building the busybox image"
  real_node_containerd_config
  real_node_registry_hosts "$REAL_NODE_IP:$reg_port"
  real_node_registry_hosts "$REAL_NODE_IP:$ref_port"
  real_node_registry_hosts "$REAL_NODE_IP:$auth_port"
  real_node_registry_hosts "$REAL_NODE_IP:$token_reg_port"
  real_node_registry_hosts "$REAL_NODE_IP:$tls_port" "$state/pki/registry-ca.crt"
  real_node_kubelet_config || die "real node: kubelet credentials"
  real_node_cgroups_up || die "real node: creating cgroup $REAL_NODE_CGROUP in the v1 hierarchies"
  CGROUP_PROCS=$(for h in $(cgroup_hierarchies); do printf '%s ' "$h/$REAL_NODE_CGROUP/runtime/cgroup.procs"; done)
  export CGROUP_PROCS
  PATH=$tools:$PATH in_node node-containerd "$tools/containerd" --config "$rn/containerd/config.toml"
  wait_for node-containerd 30 "$tools/ctr" --address "$rn/containerd.sock" version
  in_node node-kubelet "$tools/kubelet" --config "$rn/kubelet.yaml" --kubeconfig "$rn/kubelet.kubeconfig" \
    --root-dir "$rn/kubelet" --hostname-override "$REAL_NODE" --node-ip "$REAL_NODE_IP" \
    --node-labels "e2e.modelpack.dev/real-node=true" --v=1
  local k="$tools/kubectl --kubeconfig $state/kubeconfig"
  wait_for node-kubelet 120 real_node_ready "$k"
  # The node-lifecycle controller is off (simulated nodes send no heartbeats), so the taint that
  # admission gives every new node is removed here once the kubelet reports Ready, as it would.
  $k taint nodes "$REAL_NODE" node.kubernetes.io/not-ready:NoSchedule- >/dev/null 2>&1 || true
}

real_node_ready() {
  [ "$($1 get node "$REAL_NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

# Stops the node (not its network: real_node_net_down goes last, once nothing that may address it
# runs any more).
real_node_down() {
  stop_one node-kubelet
  stop_one node-containerd
  # Shims and containers outlive containerd by design: every process left in the node's cgroups goes.
  local try pids
  for try in $(seq 1 50); do
    pids=$(real_node_pids)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  [ -z "$(real_node_pids)" ] || log "real node: processes left in cgroup $REAL_NODE_CGROUP: $(real_node_pids | tr '\n' ' ')"
  # Mounts: container root filesystems, pod volumes, pod network namespaces (all under $rn).
  local m
  if [ -d "$rn" ]; then
    for try in 1 2 3; do
      mapfile -t m < <(awk -v p="$rn/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r)
      [ ${#m[@]} -gt 0 ] || break
      for x in "${m[@]}"; do umount -l "$x" 2>/dev/null || true; done
    done
  fi
  local h
  for h in $(cgroup_hierarchies); do
    if [ -d "$h/$REAL_NODE_CGROUP" ]; then
      find "$h/$REAL_NODE_CGROUP" -depth -type d -exec rmdir {} + 2>/dev/null ||
        log "real node: could not remove cgroup $h/$REAL_NODE_CGROUP"
    fi
  done
  stop_one node-forward
  if [ -d "$rn" ]; then rm -rf "$rn" 2>/dev/null || log "real node: could not remove $rn"; fi
}
