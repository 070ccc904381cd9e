from tumorfm.cli import main

main()
