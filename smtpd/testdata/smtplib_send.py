# Sends one message with Python's smtplib, the way a mail program would.
# usage: smtplib_send.py MODE HOST PORT CAFILE USER PASSWORD MECH FROM TO FILE
# MODE: plain (no TLS), starttls, tls (implicit, port 465). USER "" skips AUTH.
import smtplib
import ssl
import sys

mode, host, port, cafile, user, password, mech, sender, rcpt, path = sys.argv[1:]
with open(path, "rb") as f:
    msg = f.read()
ctx = ssl.create_default_context(cafile=cafile)
if mode == "tls":
    s = smtplib.SMTP_SSL(host, int(port), local_hostname="py.example.test", context=ctx, timeout=60)
else:
    s = smtplib.SMTP(host, int(port), local_hostname="py.example.test", timeout=60)
    if mode == "starttls":
        s.starttls(context=ctx)
if user:
    if mech == "LOGIN":
        s.ehlo_or_helo_if_needed()
        s.user, s.password = user, password
        s.auth("LOGIN", s.auth_login)
    else:
        s.login(user, password)
refused = s.sendmail(sender, [rcpt], msg)
s.quit()
if refused:
    sys.exit("refused: %r" % refused)
