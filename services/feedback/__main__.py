from services.feedback.app import main

main()
