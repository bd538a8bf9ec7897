from ftplan.cli import main

main()
