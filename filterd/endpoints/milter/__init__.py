"""The Milter endpoint: Postfix's smtpd_milters, over purepythonmilter's protocol layer."""
