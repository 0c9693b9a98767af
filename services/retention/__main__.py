from services.retention.app import main

main()
