from viopay.cli import main

main()
