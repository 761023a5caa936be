# The frozen executable's entry: dispatch on the name we were called by.
from k4s.main import main

main()
