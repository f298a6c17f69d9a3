from ogelkit.cli import main

main()
