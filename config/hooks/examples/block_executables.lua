-- Refuse mail that carries a program, judged by the file name alone, before or without
-- any analysis: names are matched whole and without regard to case, so [[.*\.exe]] also
-- catches "INVOICE.EXE".
--
-- A refusal reaches the sender as a bounce when vxgate runs after the queue; for mail whose
-- sender may be forged, {action = "quarantine"} keeps the message for an administrator
-- without bouncing anything.

local EXECUTABLE = [[.*\.(exe|scr|com|pif|bat|cmd|vbs|vbe|js|jse|wsf|hta|msi|ps1|lnk|jar)]]

function smtp_hook(ctx)
  for part, path in ctx.message.files{name_re = EXECUTABLE} do
    drweb.notice("refusing " .. part.name .. " (part " .. path .. ") from " .. ctx.from)
    return {action = "reject",
            message = "5.7.1 Executable attachments are not accepted: " .. part.name}
  end
  return {action = "accept"}
end
