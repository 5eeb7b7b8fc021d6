-- Argo CD health of a servicedb.dev DatabaseBackup.
local function condition(wanted)
  for _, c in ipairs(obj.status.conditions or {}) do
    if c.type == wanted then
      return c
    end
  end
  return nil
end

local hs = {}
if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to start the backup"
  return hs
end
local completed = condition("Completed")
local message = completed ~= nil and completed.message or obj.status.phase
if obj.status.phase == "Completed" then
  if obj.status.verified == false then
    hs.status = "Degraded"
    hs.message = "The archive failed its verification: " .. message
  else
    hs.status = "Healthy"
    hs.message = message
  end
elseif obj.status.phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
else
  hs.status = "Progressing"
  hs.message = message
end
return hs
