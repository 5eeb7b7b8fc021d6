-- Argo CD health of a servicedb.dev DatabaseClass: usable once it exists (the
-- API server checked its schema); Progressing only while servicedb has not
-- yet described its current generation.
local hs = {}
if obj.status ~= nil and obj.status.observedGeneration ~= nil and obj.metadata.generation ~= nil
    and obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for servicedb to read generation " .. obj.metadata.generation
  return hs
end
hs.status = "Healthy"
if obj.status ~= nil and obj.status.defaultVersion ~= nil then
  hs.message = "New databases get version " .. obj.status.defaultVersion
else
  hs.message = "Ready to be named by ServiceDatabases"
end
return hs
