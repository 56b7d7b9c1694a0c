from ptdiag.cli import main

main()
