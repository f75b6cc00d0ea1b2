resource "fleetform_bare_metal_machine" "example" {
  name      = "fra-bm-01"
  location  = "fra-metal"
  address   = "203.0.113.10"
  cores     = 32
  memory_gb = 128

  labels = {
    rack = "r12"
    cpu  = "epyc-7443p"
  }
}
