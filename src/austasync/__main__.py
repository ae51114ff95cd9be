from austasync.cli import main

main()
