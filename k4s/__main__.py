from k4s.main import main

main()
