from tunelab.cli.entry import main

main()
