-- Argo CD health of a modelpack.dev ModelDeployment, from its kstatus conditions and drift.
local hs = {}
local function condition(t)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == t then return c end
  end
  return nil
end
if obj.spec ~= nil and obj.spec.suspend == true then
  hs.status = "Suspended"
  hs.message = "ModelDeployment is suspended: no pull Jobs are created"
  return hs
end
if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator"
  return hs
end
if obj.metadata.generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. obj.metadata.generation
  return hs
end
local stalled = condition("Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.reason .. ": " .. (stalled.message or "")
  return hs
end
local ready = condition("Ready")
-- The hand-over to spec.workloads: a workload that is missing (or lacks the image volume), pods of
-- the version that cannot start or whose runtime mounts the model empty, are errors; once nodes
-- are in sync, the workloads' rollout is still progress.
local workloads = condition("WorkloadsUpdated")
if workloads ~= nil and workloads.status == "False" then
  if workloads.reason == "WorkloadNotFound" or workloads.reason == "ImageVolumeNotFound" or workloads.reason == "ImageVolumeNotMounted" or workloads.reason == "PodsFailing" then
    hs.status = "Degraded"
    hs.message = workloads.reason .. ": " .. (workloads.message or "")
    return hs
  end
  if ready ~= nil and ready.status == "True" then
    hs.status = "Progressing"
    hs.message = "workloads: " .. (workloads.message or "")
    return hs
  end
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or ""
  return hs
end
local reconciling = condition("Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = reconciling.message or ""
  if obj.status.nodes ~= nil then
    hs.message = hs.message .. " (" .. obj.status.nodes.summary .. " nodes ready)"
  end
  return hs
end
if ready ~= nil and ready.status == "False" then
  hs.status = "Degraded"
  hs.message = ready.reason .. ": " .. (ready.message or "")
  return hs
end
hs.status = "Progressing"
hs.message = "Waiting for the Ready condition"
return hs
