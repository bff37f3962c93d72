from ecapture.cli import main

raise SystemExit(main())
