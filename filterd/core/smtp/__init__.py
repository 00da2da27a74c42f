"""The SMTP server, sans-I/O: command lines (commands.py), the sequencing table (machine.py)
and the protocol replies (replies.py). The proxy's I/O loop feeds it lines and renders what
it returns; nothing here reads a socket, keeps time or logs."""
