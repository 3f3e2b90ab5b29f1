from memgen.cli import main

main()
