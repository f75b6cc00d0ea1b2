resource "fleetform_build" "example" {
  name             = "arena-server"
  version          = "1.4.2"
  operating_system = "linux"
  source           = "s3://game-builds/arena-server-1.4.2.tar.gz"
  sha256           = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
}
