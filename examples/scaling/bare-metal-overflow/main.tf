# Bare metal first, cloud overflow: the 8 bare-metal machines of the fra-metal site are
# always on and always count first; the VM data center only supplies what the buffer
# needs beyond them, and scales back to nothing when the bare metal suffices.
#
#   terraform apply -var fleet_id=flt-…

terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "fleet_id" {
  description = "The fleet whose server processes the zone runs (a fleetform_fleet id)."
  type        = string
}

resource "fleetform_zone" "metal_first" {
  fleet_id                 = var.fleet_id
  name                     = "frankfurt"
  initial_server_processes = 16

  buffer_rule {
    available_percent = 15
  }

  data_center {
    name                = "fra-metal"
    location            = "fra-metal"
    priority            = 0
    machine_type        = "bare_metal"
    bare_metal_machines = 8

    # How many processes each pool machine runs.
    machine_model {
      instance_type         = "metal-32-core"
      processes_per_machine = 16
    }
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    priority             = 1
    machine_type         = "vm"
    max_server_processes = 1000

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
  }
}
