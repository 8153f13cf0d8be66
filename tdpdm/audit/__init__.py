"""`tdpdm audit`: an empirical one-run privacy audit with inserted canaries (DESIGN 3.6)."""
