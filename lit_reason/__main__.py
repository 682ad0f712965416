from lit_reason.cli import main

main()
