"""Email over SMTP with the standard library (STARTTLS or TLS, login from ${ENV})."""

import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from ..inert import one_line
from .base import Channel, SendResult, _resolve, _shown

log = logging.getLogger(__name__)

REFUSED_ADVICE = ("the mail server refused us: fix the channel's username, password, sender or recipients (or its "
                  "ssl/starttls) in the config")

MAX_SUBJECT_CHARS = 200  # longer titles are cut; the header itself is folded by the email package


def safe_subject(title):
    """A Subject the header can hold whatever the title: one line (a CR or LF in a header is refused, and
    would start a header of its own), no control characters, at most MAX_SUBJECT_CHARS."""
    subject = one_line(title)
    return subject if len(subject) <= MAX_SUBJECT_CHARS else subject[: MAX_SUBJECT_CHARS - 1] + "…"


class EmailChannel(Channel):
    """Plain-text mail over SMTP (STARTTLS or implicit TLS; login only with a username)."""

    kind = "email"
    default_rate = 60
    fields = ("host", "username", "password", "sender", "to")
    secret_fields = ("password",)

    def __init__(self, name, host, sender, to, port=None, starttls=True, use_ssl=False, username=None,
                 password=None, **kw):  # fmt: skip
        kw.setdefault("timeout", 10.0)
        super().__init__(name, **kw)
        self.host, self.sender, self.to = host, sender, tuple(to)
        self.port = port or (465 if use_ssl else 587 if starttls else 25)
        self.starttls, self.use_ssl, self.username, self.password = starttls, use_ssl, username, password

    @classmethod
    def parse(cls, name, t, **kw):
        use_ssl, starttls = t.boolean("ssl", False), t.boolean("starttls", True)
        if use_ssl and "starttls" in t.values:
            t.fail("starttls", "cannot be combined with ssl = true (implicit TLS); remove one of them")
        to = t.strings("to")
        if not to:
            t.fail("to", 'missing or empty; set to = ["ops@example.com"]')
        return cls(name, t.string("host", required=True), t.string("sender", required=True), to,
                   t.number("port", None, integer=True, high=65535), starttls and not use_ssl, use_ssl,
                   t.string("username"), t.string("password"), **kw)  # fmt: skip

    def describe(self):
        return f"email via {_shown(self.host)}:{self.port} to {', '.join(_shown(a) for a in self.to)}"

    def _send(self, message):
        host, sender, to = _resolve(self.host), _resolve(self.sender), _resolve(list(self.to))
        mail = EmailMessage()
        mail["Subject"], mail["From"], mail["To"] = safe_subject(message.title), sender, ", ".join(to)
        mail["Date"], mail["Message-ID"] = formatdate(self.clock.now(), usegmt=True), make_msgid(domain="failured")
        mail.set_content(message.body, charset="utf-8")
        username = _resolve(self.username) if self.username else None
        password = _resolve(self.password) if self.password else ""
        try:
            context = ssl.create_default_context()  # verifies the certificate; smtplib's default does not
            connect = smtplib.SMTP_SSL(host, self.port, timeout=self.timeout, context=context) if self.use_ssl \
                else smtplib.SMTP(host, self.port, timeout=self.timeout)
            with connect as smtp:
                if self.starttls:
                    smtp.starttls(context=context)
                if username:
                    smtp.login(username, password)
                refused = smtp.send_message(mail)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError, smtplib.SMTPSenderRefused,
                smtplib.SMTPRecipientsRefused) as exc:  # fmt: skip
            return SendResult(False, misconfigured=True, error=f"{type(exc).__name__}: {exc}",
                              advice=REFUSED_ADVICE)
        except smtplib.SMTPDataError as exc:
            # 5xx after DATA: the server refuses this message (its size, its content), not us.
            return SendResult(False, error=f"{type(exc).__name__}: {exc}", message_fault=exc.smtp_code >= 500)
        except (smtplib.SMTPException, OSError) as exc:
            return SendResult(False, error=f"{type(exc).__name__}: {exc}")
        answer = f"accepted for {len(to) - len(refused)} of {len(to)} recipients"
        return SendResult(True, answer=answer + (f"; refused: {', '.join(refused)}" if refused else ""))


