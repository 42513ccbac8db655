-- Argo CD health check of siphon.dev/PostgresCapture.
--
-- Install it in argocd-cm under the key
--   resource.customizations.health.siphon.dev_PostgresCapture
-- (charts/siphon/README.md shows how). Argo CD runs it with `obj` set to the
-- resource; it returns { status = Healthy | Progressing | Degraded |
-- Suspended | Missing, message = ... }. Argo opens only Lua's base, table and
-- package libraries (no string library), so this uses none of string's
-- functions. e2e/argocd-health tests it the way Argo runs it, with a fixture
-- per outcome.
--
--   being deleted                     Progressing (Degraded while TeardownBlocked)
--   spec.suspend: true                Suspended
--   spec not yet observed             Progressing
--   Stalled=True                      Degraded (a failure a person must fix)
--   Ready=True                        Healthy
--   Ready=False, a DEFINITE reason    Degraded (operators before Stalled)
--   Ready=False otherwise, or absent  Progressing

-- Reasons of Ready=False that wait for a person, for operators that do not
-- write the Stalled condition yet. Every reason of crds/src/conditions.rs is
-- either here or listed as not definite in e2e/argocd-health's test.
local DEFINITE = {
  InvalidSpec = true,
  SecretNotFound = true,
  AuthenticationFailed = true,
  WalLevelNotLogical = true,
  MissingReplicationPrivilege = true,
  InsufficientPrivilege = true,
  TableNotFound = true,
  NoPrimaryKey = true,
  UnsupportedServerVersion = true,
  PublicationNotFound = true,
  SlotClaimedByAnotherCapture = true,
  SlotLost = true,
  SlotMissing = true,
  WorkerFailing = true,
  InvalidFilter = true,
  FilterOutsideReplicaIdentity = true,
  RowFilterUnsupported = true,
  PublicationMissingTable = true,
  PublicationBreaksWrites = true,
  KafkaRefused = true,
  CaptureFailed = true,
  CursorColumnMissing = true,
  CursorTypeUnsupported = true,
  InvalidQuery = true,
  HorizonUnavailable = true,
}

local function find(conditions, type_)
  if type(conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

-- "Reason: message", or whichever of the two there is.
local function describe(c, fallback)
  local reason = c.reason or ""
  local message = c.message or ""
  if reason ~= "" and message ~= "" then
    return reason .. ": " .. message
  elseif reason ~= "" then
    return reason
  elseif message ~= "" then
    return message
  end
  return fallback
end

local function health(obj)
  local metadata = obj.metadata or {}
  local spec = obj.spec or {}
  local status = obj.status or {}
  local conditions = status.conditions

  if metadata.deletionTimestamp ~= nil then
    local blocked = find(conditions, "TeardownBlocked")
    if blocked ~= nil and blocked.status == "True" then
      return "Degraded", describe(blocked, "teardown is blocked")
    end
    return "Progressing", "Deleting: the finalizer drops the database objects the capture created"
  end

  if spec.suspend == true then
    local ready = find(conditions, "Ready")
    if ready ~= nil and ready.reason == "Suspended" and ready.message ~= nil then
      return "Suspended", ready.message
    end
    return "Suspended", "spec.suspend is true: the worker is stopped"
  end

  local generation = metadata.generation
  if generation ~= nil then
    local observed = status.observedGeneration
    if observed == nil or observed < generation then
      return "Progressing", "Waiting for the operator to reconcile generation " .. tostring(generation)
    end
  end

  local stalled = find(conditions, "Stalled")
  if stalled ~= nil and stalled.status == "True" then
    return "Degraded", describe(stalled, "the capture is stalled")
  end

  local ready = find(conditions, "Ready")
  if ready == nil then
    return "Progressing", "Waiting for the Ready condition"
  end
  if generation ~= nil and ready.observedGeneration ~= nil and ready.observedGeneration < generation then
    return "Progressing", "Waiting for the Ready condition of generation " .. tostring(generation)
  end
  if ready.status == "True" then
    return "Healthy", describe(ready, "Ready")
  end
  if ready.status == "False" and DEFINITE[ready.reason] then
    return "Degraded", describe(ready, "not Ready")
  end
  return "Progressing", describe(ready, "not Ready yet")
end

local hs = {}
hs.status, hs.message = health(obj)
return hs
