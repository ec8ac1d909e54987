from tuninetd.tuntapd.main import main

main()
