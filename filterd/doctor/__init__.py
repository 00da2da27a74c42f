"""`filterd doctor`: check a live Postfix (and clamd) configuration against filterd's.

One job per module, and the data flows one way:

    postconf.py   runs postconf(1) and parses what it prints   -> postfix.PostfixFacts
    clamdconf.py  reads clamd.conf(5)                          -> clamdconf.ClamdConf
    roles.py      which master.cf service does what for filterd (front, reinjection)
    smuggling.py, wiring.py, limits.py
                  the checks: pure functions over that parsed data, returning Findings
    probe.py      the smuggling harness run against the live front port (--probe)
    report.py     findings as text for people, JSON for machines
    cli.py        the subcommand: gather, check, report, exit status

The checks never run a program or read a file, so their tests are tables of parsed data.
"""
