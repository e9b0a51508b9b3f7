from viopay_tools.cli import main

main()
