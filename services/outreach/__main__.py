from services.outreach.app import main

main()
