-- vxgate's default mail policy (SmtpHook). It runs for every message, so it reads only
-- ctx.vxcube (already in memory) unless there is something to do: the message itself is
-- parsed only when a header is edited or a part repacked.
--
-- Verdicts and what happens (the README explains the verdict scale):
--   clean, none  -> delivered untouched (byte for byte, DKIM intact)
--   unchecked    -> depends on why (ctx.vxcube.cause, its kind in ctx.vxcube.cause_kind):
--     sender     (too-many-files, too-deep, encrypted, unparseable): the sender chose to send
--                something nobody can look into, so it fails closed: quarantine (checked
--                first, whatever the verdict: a dangerous file next to a hidden one does not
--                make the hidden one harmless).
--     outage     (quota, budget, vxcube-error, timeout): not the message's fault, and not a
--                verdict (see PeekabooAV issue #57): tempfail, so it is analysed again later,
--                until VxcubeMaxHold has passed (ctx.vxcube.hold_expired); then
--                VxcubeHoldFallback (ctx.vxcube.hold_fallback): quarantine, or deliver with
--                "X-Vxgate-Verdict: unchecked".
--     unsupported (vxCube cannot run the file, e.g. an empty one): delivered with
--                "X-Vxgate-Verdict: unchecked".
--   suspicious   -> delivered with "X-Vxgate-Verdict: suspicious" and "[SUSPICIOUS]" in the
--                   subject, so the recipient is warned and mail filters can sort it.
--   dangerous    -> each dangerous file is repacked into a password-protected zip next to a
--                   note, and the message is delivered with "X-Vxgate-Verdict: dangerous".
--                   Repacking instead of quarantining: the recipient still gets the text and
--                   the harmless parts and learns that something was held back, the file
--                   cannot be opened by accident, and an administrator can hand out the
--                   password (HMAC mode) without touching a quarantine. Never a reject: the
--                   sender is usually forged, and a bounce would hit an innocent person.

local VERDICT_HEADER = "X-Vxgate-Verdict"
local SUBJECT_TAG = "[SUSPICIOUS]"

function smtp_hook(ctx)
  local vx = ctx.vxcube
  local verdict = vx.verdict
  -- The common case costs one field read: nothing was found, so nothing is changed.
  if verdict == "clean" or verdict == "none" then
    return {action = "accept"}
  end

  if vx.cause_kind == "sender" then
    return {action = "quarantine", message = "unchecked: " .. vx.cause}
  end
  if verdict == "unchecked" and vx.cause_kind == "outage" then
    if not vx.hold_expired then
      return {action = "tempfail", message = "not analysed yet (" .. vx.cause .. "), try again later"}
    elseif vx.hold_fallback == "quarantine" then
      return {action = "quarantine", message = "unchecked: " .. vx.cause .. " for longer than VxcubeMaxHold"}
    end
  end

  local modifier = ctx.modifier
  -- change_header_field replaces a copy of our header forged by the sender, or adds one.
  modifier.change_header_field(VERDICT_HEADER, verdict)

  if verdict == "suspicious" then
    local subject = ctx.message.header.value("Subject") or ""
    -- Replies and forwards may carry the tag already; one is enough.
    if not subject:find(SUBJECT_TAG, 1, true) then
      modifier.change_header_field("Subject", SUBJECT_TAG .. " " .. subject)
    end
  elseif verdict == "dangerous" then
    for _, file in ipairs(ctx.vxcube.files) do
      if file.verdict == "dangerous" then
        -- A file reported without a MIME path, or at a path this message does not have,
        -- cannot be cut out alone: the whole message goes into quarantine.zip then.
        if file.path and ctx.message.part_at(file.path) then
          modifier.repack(file.path)
        else
          modifier.repack()
        end
      end
    end
    modifier.repack_message = "Dr.Web vxCube found the file dangerous."
  end
  -- Scheduled modifications are applied because the message is accepted.
  return {action = "accept"}
end
