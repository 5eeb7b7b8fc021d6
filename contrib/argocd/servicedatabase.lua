-- Argo CD health of a servicedb.dev ServiceDatabase.
local function condition(wanted)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end
local function said(c)
  return c.reason .. ": " .. c.message
end

local hs = {}
if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to reconcile"
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to reconcile generation " .. obj.metadata.generation
  return hs
end
local final = condition("FinalBackup")
if obj.status.phase == "Deleting" then
  if final ~= nil and final.reason == "FinalBackupFailed" then
    hs.status = "Degraded"
  else
    hs.status = "Progressing"
  end
  hs.message = final ~= nil and said(final) or "Being deleted"
  return hs
end
local stalled = condition("Stalled")
local valid = condition("SpecValid")
if valid ~= nil and valid.status == "False" then
  hs.status = "Degraded"
  hs.message = said(valid)
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end
local ready = condition("Ready")
if ready ~= nil and ready.status == "True" then
  local backups = condition("BackupHealthy")
  if backups ~= nil and backups.status == "False" then
    hs.status = "Degraded"
    hs.message = said(backups)
    return hs
  end
  hs.status = "Healthy"
  hs.message = ready.message
  return hs
end
-- Not Ready: a database that was Ready and is not any more is Degraded; a
-- new one is still being provisioned.
if obj.status.phase == "Degraded" or obj.status.phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Progressing"
end
hs.message = ready ~= nil and said(ready) or "Waiting for the Ready condition"
return hs
