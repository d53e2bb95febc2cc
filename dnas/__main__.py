from dnas.cli import main

main()
