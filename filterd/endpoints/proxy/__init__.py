"""The smtpd_proxy_filter endpoint: an SMTP server that relays to a reinjection smtpd."""
