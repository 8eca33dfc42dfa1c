from stagemfu.cli import main

main()
