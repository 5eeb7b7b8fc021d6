-- Argo CD health of a servicedb.dev DatabaseClass: it has no status, and is
-- Healthy once it exists (the API server checked its schema).
local hs = {}
hs.status = "Healthy"
hs.message = "A DatabaseClass has no status"
return hs
