-- Per-recipient policy: some mailboxes must never receive mail that is not known to be
-- clean. A message has one verdict but many recipients, so the strict ones are taken off
-- the message and the security team gets it in their place; everybody else receives it
-- tagged as usual.

local STRICT = {["ceo@example.com"] = true, ["finance@example.com"] = true}
local STRICT_DOMAINS = {["payroll.example.com"] = true}
local SECURITY = "security@example.com"

local function strict(rcpt)
  rcpt = rcpt:lower()
  return STRICT[rcpt] or STRICT_DOMAINS[rcpt:match("@(.+)$") or ""] or false
end

function smtp_hook(ctx)
  local vx = ctx.vxcube
  if not vx.has_verdict("unchecked") then   -- clean or not analysed
    return {action = "accept"}
  end
  local held = {}
  for _, rcpt in ipairs(ctx.to) do
    if strict(rcpt) then held[#held + 1] = rcpt end
  end
  ctx.modifier.change_header_field("X-Vxgate-Verdict", vx.verdict)
  if #held == 0 then
    return {action = "accept"}
  end
  drweb.notice(#held .. " strict recipient(s) held back, message goes to " .. SECURITY)
  if #held == #ctx.to then
    -- Nobody else is left: keep the message for an administrator instead of delivering.
    return {action = "quarantine", message = vx.verdict .. " mail for strict recipients"}
  end
  return {action = "accept", deleted_recipients = held, added_recipients = {SECURITY}}
end
