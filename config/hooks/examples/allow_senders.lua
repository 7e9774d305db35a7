-- Allow-list: suspicious mail from trusted senders is delivered without the subject tag.
-- Dangerous files are repacked whoever sends them: a sender address is easy to forge.
local drweb = require "drweb"   -- the global drweb works too; require keeps old policies running

-- One pattern per line, matched against the whole envelope sender, case-insensitively.
-- A list file is read from the SmtpHookLists folder (config/hooks/lists), once, at load:
--   local TRUSTED = drweb.load_array("trusted_senders.txt")
local TRUSTED = {
  [[.*@example\.com]],
  [[billing@partner\.example]],
}

function smtp_hook(ctx)
  local vx = ctx.vxcube
  if vx.verdict == "suspicious"
      and drweb.regex.match(TRUSTED, ctx.from, drweb.regex.ignore_case) then
    drweb.info("suspicious mail from trusted sender " .. ctx.from .. " delivered untagged")
    ctx.modifier.change_header_field("X-Vxgate-Verdict", "suspicious")
    return {action = "accept"}
  end
  if vx.has_verdict("dangerous") then
    for _, file in ipairs(vx.files) do
      if file.verdict == "dangerous" then ctx.modifier.repack(file.path) end
    end
  elseif vx.verdict == "suspicious" then
    local subject = ctx.message.header.value("Subject") or ""
    ctx.modifier.change_header_field("Subject", "[SUSPICIOUS] " .. subject)
  end
  return {action = "accept"}
end
