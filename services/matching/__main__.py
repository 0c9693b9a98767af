from services.matching.app import main

main()
