from ptdiag.entry import main

main()
